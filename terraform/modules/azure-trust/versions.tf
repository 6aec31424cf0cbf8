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
      source  = "hashicorp/azurerm"
      version = ">= 4.0.0, < 5.0.0"
    }
  }
}
