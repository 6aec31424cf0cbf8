terraform {
  # 1.9 lets a variable's validation refer to other variables (allow_rules vs roles).
  required_version = ">= 1.9.0"

  required_providers {
    azuread = {
      source = "hashicorp/azuread"
      # 3.x: federated credentials take application_id (the application's resource ID).
      version = ">= 3.0.0, < 4.0.0"
    }
    azurerm = {
      source = "hashicorp/azurerm"
      # azurerm_federated_identity_credential is written with parent_id and
      # resource_group_name, which azurerm 5.0 removes (its upgrade guide: parent_id gives
      # way to user_assigned_identity_id; hashicorp/terraform-provider-azurerm#31921, and
      # #30860 for resource_group_name). Late 4.x releases accept both spellings and warn
      # that these two are deprecated. Moving to user_assigned_identity_id needs a provider
      # to validate against, which CI does not have: see the module's README.
      version = ">= 4.0.0, < 5.0.0"
    }
  }
}
