provider "google" {
  project = var.project_id
}

module "broker_trust" {
  source = "../../modules/gcp-trust"

  project_id  = var.project_id
  issuer_url  = var.issuer_url
  pool_id     = var.pool_id
  provider_id = var.provider_id
  roles       = var.roles
  allow_rules = var.allow_rules
}
