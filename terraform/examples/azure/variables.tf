variable "issuer_url" {
  description = "The broker's issuer URL, byte for byte the `server.issuer` of the broker config: https, no port, query, fragment or trailing slash (Entra ID compares it with the `iss` of every assertion)."
  type        = string
}

variable "identity_type" {
  description = "What each broker role becomes: application (null, the default: an Entra ID application and service principal, needs directory rights) or user_assigned_identity (a managed identity in resource_group_name, needs only Azure RBAC rights)."
  type        = string
  default     = null
}

variable "resource_group_name" {
  description = "For identity_type = user_assigned_identity: the existing resource group that holds the identities."
  type        = string
  default     = null
}

variable "location" {
  description = "For identity_type = user_assigned_identity: the Azure region of the identities, e.g. westeurope."
  type        = string
  default     = null
}

variable "name_prefix" {
  description = "Prefix of the application or identity names made from broker role names (null: ci-broker-)."
  type        = string
  default     = null
}

variable "roles" {
  description = "Broker roles to provision, keyed by broker role name (the key under `roles:` in the broker config). Each gets its own application or identity, with a single federated credential for subject role:<name>, so no two broker roles share an Azure identity."
  type = map(object({
    display_name    = optional(string)
    scope           = optional(string, "https://management.azure.com/.default")
    subscription_id = optional(string)
    role_assignments = optional(list(object({
      scope                = string
      role_definition_name = optional(string)
      role_definition_id   = optional(string)
    })), [])
  }))
}

variable "allow_rules" {
  description = "Broker `allow:` rules per broker role name, copied as-is into the broker_roles_yaml output (see CONTRACT section 2). A role left out gets `allow: []`, which the broker refuses to load: write its rules here or in the broker config before deploying it."
  # `any` for the same reason as in the module, which validates all of these.
  type    = any
  default = {}
}

variable "subscription_id" {
  description = "Subscription the azurerm provider works in (required by azurerm 4.x)."
  type        = string
}

variable "application_owners" {
  description = "For identity_type = application: object IDs of extra owners of each application and service principal."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for the managed identities (identity_type = user_assigned_identity)."
  type        = map(string)
  default     = {}
}

variable "token_exchange_audience" {
  description = "Audience of the federated credentials and of the broker's assertions; null for the public cloud (api://AzureADTokenExchange)."
  type        = string
  default     = null
}

variable "authority_host" {
  description = "Entra ID authority host for the broker; null for the public cloud (https://login.microsoftonline.com)."
  type        = string
  default     = null
}
