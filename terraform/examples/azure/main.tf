# For Azure Government or Azure operated by 21Vianet, set `environment` in both provider
# blocks as well as token_exchange_audience and authority_host (see the module's README).
provider "azuread" {}

provider "azurerm" {
  features {}
  subscription_id = var.subscription_id
}

module "broker_trust" {
  source = "../../modules/azure-trust"

  issuer_url              = var.issuer_url
  identity_type           = var.identity_type
  resource_group_name     = var.resource_group_name
  location                = var.location
  name_prefix             = var.name_prefix
  roles                   = var.roles
  allow_rules             = var.allow_rules
  application_owners      = var.application_owners
  tags                    = var.tags
  token_exchange_audience = var.token_exchange_audience
  authority_host          = var.authority_host
}
