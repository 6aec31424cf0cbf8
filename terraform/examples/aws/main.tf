provider "aws" {
  region = var.aws_region
}

module "broker_trust" {
  source = "../../modules/aws-trust"

  issuer_url  = var.issuer_url
  roles       = var.roles
  allow_rules = var.allow_rules
  tags        = var.tags
}
