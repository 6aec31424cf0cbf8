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

variable "mode" {
  description = "web_identity (null, the default: each role trusts the broker's OIDC issuer) or assume_role (each role trusts broker_principal_arn; role separation then rests on the broker alone)."
  type        = string
  default     = null
}

variable "broker_principal_arn" {
  description = "For mode = assume_role only: the exact ARN of the IAM role or user the broker runs as."
  type        = string
  default     = null
}

variable "existing_oidc_provider_arn" {
  description = "ARN of an IAM OIDC provider for issuer_url that already exists in the account (IAM allows one per URL). Null creates it."
  type        = string
  default     = null
}

variable "thumbprint_list" {
  description = "Optional SHA-1 thumbprints of the issuer's TLS certificate chain; null lets IAM verify the chain against its own trusted CAs."
  type        = list(string)
  default     = null
}

variable "role_name_prefix" {
  description = "Prefix of the IAM role names made from broker role names (null: ci-broker-)."
  type        = string
  default     = null
}

variable "role_path" {
  description = "IAM path of the created roles (null: /)."
  type        = string
  default     = null
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
