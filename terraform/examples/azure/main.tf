provider "azuread" {}

provider "azurerm" {
  features {}
  subscription_id = var.subscription_id
}

module "broker_trust" {
  source = "../../modules/azure-trust"

  issuer_url    = var.issuer_url
  identity_type = var.identity_type
  roles         = var.roles
  allow_rules   = var.allow_rules
}
