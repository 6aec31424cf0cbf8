variable "project_id" {
  description = "ID of the project that holds the workload identity pool (and receives the direct project_roles bindings)."
  type        = string
}

variable "issuer_url" {
  description = "The broker's issuer URL, byte for byte the `server.issuer` of the broker config: https, no port, query, fragment or trailing slash (STS compares it with the `iss` of every assertion)."
  type        = string
}

variable "roles" {
  description = "Broker roles to provision, keyed by broker role name (the key under `roles:` in the broker config). Each role's principal is principal://.../subject/role:<name>; give it a service_account to impersonate, project_roles for direct access, or both."
  type = map(object({
    service_account   = optional(string)
    project_roles     = optional(set(string), [])
    scopes            = optional(list(string), ["https://www.googleapis.com/auth/cloud-platform"])
    lifetime          = optional(number, 3600)
    extended_lifetime = optional(bool, false)
  }))
}

variable "allow_rules" {
  description = "Broker `allow:` rules per broker role name, copied as-is into the broker_roles_yaml output (see CONTRACT section 2). A role left out gets `allow: []`, which the broker refuses to load: write its rules here or in the broker config before deploying it."
  # `any` for the same reason as in the module, which validates all of these.
  type    = any
  default = {}
}

variable "pool_id" {
  description = "ID of the workload identity pool (null: ci-broker). A destroyed pool keeps its ID for about 30 days: see the module's README before re-applying after a destroy."
  type        = string
  default     = null
}

variable "provider_id" {
  description = "ID of the OIDC provider in the pool (null: broker). Soft-deleted like the pool."
  type        = string
  default     = null
}
