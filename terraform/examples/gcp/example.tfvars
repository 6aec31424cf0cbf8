# terraform apply -var-file=example.tfvars, after replacing the IDs with yours.
project_id = "my-project"
issuer_url = "https://broker.example.com"

roles = {
  # Impersonates a service account: its token carries that account's permissions.
  gcp-deploy = {
    service_account = "deployer@my-project.iam.gserviceaccount.com"
    lifetime        = 3600
  }
  # Direct resource access: the federated token itself is granted roles/viewer
  # (Google's STS issues it for one hour).
  gcp-inventory = {
    project_roles = ["roles/viewer"]
  }
}

# Who may use each role. GitHub's repository_id and GitLab's project_id are immutable,
# unlike names, which can be re-registered by someone else after a rename.
allow_rules = {
  gcp-deploy = [
    {
      provider = "gitlab"
      claims = {
        project_id      = "4242"
        ref             = "main"
        ref_type        = "branch"
        ref_protected   = "true"
        pipeline_source = ["push", "web"]
      }
    },
  ]
  gcp-inventory = [
    {
      provider = "github"
      claims = {
        repository_id    = "892734123"
        event_name       = ["push", "schedule"]
        ref              = "refs/heads/main"
        job_workflow_ref = { glob = "octo-org/inventory/.github/workflows/*.yml@refs/heads/main" }
      }
    },
  ]
}
