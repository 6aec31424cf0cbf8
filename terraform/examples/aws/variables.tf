variable "issuer_url" {
  description = "The broker's issuer URL, byte for byte the `server.issuer` of the broker config: https, no port, query, fragment or trailing slash (IAM compares it with the `iss` of every assertion)."
  type        = string
}

variable "roles" {
  description = "Broker roles to provision, keyed by broker role name (the key under `roles:` in the broker config). Each becomes one IAM role whose trust accepts only the broker's assertions with sub = role:<name>."
  type = map(object({
    iam_role_name        = optional(string)
    description          = optional(string, "")
    managed_policy_arns  = optional(set(string), [])
    inline_policies      = optional(map(string), {})
    permissions_boundary = optional(string)
    max_session_duration = optional(number, 3600)
    duration             = optional(number, 3600)
    region               = optional(string)
    session_tags         = optional(map(string))
  }))
}

variable "allow_rules" {
  description = "Broker `allow:` rules per broker role name, copied as-is into the broker_roles_yaml output (see CONTRACT section 2). A role left out gets `allow: []`, which the broker refuses to load: write its rules here or in the broker config before deploying it."
  # `any` for the same reason as in the module, which validates all of these.
  type    = any
  default = {}
}

variable "tags" {
  description = "Tags for every created resource."
  type        = map(string)
  default     = {}
}

variable "aws_region" {
  description = "Region for the AWS provider (IAM itself is global)."
  type        = string
  default     = "us-east-1"
}
