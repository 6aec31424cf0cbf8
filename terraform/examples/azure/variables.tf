variable "issuer_url" {
  description = "The broker's issuer URL, byte for byte the `server.issuer` of the broker config: https, no port, query, fragment or trailing slash (Entra ID compares it with the `iss` of every assertion)."
  type        = string
}

variable "identity_type" {
  description = "What each broker role becomes: application (an Entra ID application and service principal, needs the azuread provider and directory rights) or user_assigned_identity (a managed identity in resource_group_name, needs only Azure RBAC rights)."
  type        = string
  default     = "application"
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
