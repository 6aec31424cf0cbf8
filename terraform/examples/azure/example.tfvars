# terraform apply -var-file=example.tfvars, after replacing the IDs with yours.
subscription_id = "22222222-2222-2222-2222-222222222222"
issuer_url      = "https://broker.example.com"
identity_type   = "application"

roles = {
  azure-deploy = {
    subscription_id = "22222222-2222-2222-2222-222222222222"
    role_assignments = [
      {
        scope                = "/subscriptions/22222222-2222-2222-2222-222222222222/resourceGroups/app-prod"
        role_definition_name = "Contributor"
      },
    ]
  }
}

# Who may use each role. GitHub's repository_id is immutable, unlike the repository
# name, which can be re-registered by someone else after a rename.
allow_rules = {
  azure-deploy = [
    {
      provider = "github"
      claims = {
        repository_id = "892734123"
        event_name    = ["push", "workflow_dispatch"]
        ref           = "refs/heads/main"
        environment   = ["production", "prod"]
      }
    },
  ]
}
