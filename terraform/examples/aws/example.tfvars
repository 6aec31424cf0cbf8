# terraform apply -var-file=example.tfvars, after replacing the IDs with yours.
aws_region = "eu-west-1"
issuer_url = "https://broker.example.com"

roles = {
  deploy-prod = {
    description          = "Deploys the main branch to production"
    managed_policy_arns  = ["arn:aws:iam::123456789012:policy/deploy-prod"]
    max_session_duration = 3600
    duration             = 3600
    region               = "eu-west-1"
  }
  terraform-plan = {
    description         = "Read-only plans for every branch"
    managed_policy_arns = ["arn:aws:iam::aws:policy/ReadOnlyAccess"]
    duration            = 900
  }
}

# Who may use each role. GitHub's repository_id and GitLab's project_id are immutable,
# unlike names, which can be re-registered by someone else after a rename.
allow_rules = {
  deploy-prod = [
    {
      provider = "github"
      claims = {
        repository_id = "892734123"
        event_name    = "push"
        ref           = "refs/heads/main"
        environment   = "production"
      }
    },
  ]
  terraform-plan = [
    {
      provider = "github"
      claims = {
        repository_id = "892734123"
        event_name    = ["push", "workflow_dispatch"]
        ref           = { glob = "refs/heads/*" }
      }
    },
    {
      provider = "gitlab"
      claims = {
        project_id      = "4242"
        pipeline_source = "push"
        ref_protected   = "true"
      }
    },
  ]
}

tags = {
  owner = "platform-team"
}
