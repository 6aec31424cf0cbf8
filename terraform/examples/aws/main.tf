provider "aws" {
  region = var.aws_region
}

module "broker_trust" {
  source = "../../modules/aws-trust"

  issuer_url                 = var.issuer_url
  roles                      = var.roles
  allow_rules                = var.allow_rules
  mode                       = var.mode
  broker_principal_arn       = var.broker_principal_arn
  existing_oidc_provider_arn = var.existing_oidc_provider_arn
  thumbprint_list            = var.thumbprint_list
  role_name_prefix           = var.role_name_prefix
  role_path                  = var.role_path
  tags                       = var.tags
}
