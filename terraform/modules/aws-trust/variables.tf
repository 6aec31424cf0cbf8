# Inputs with a default are `nullable = false`: a caller passing null, as the examples do for
# what their users leave unset, gets the default.

variable "issuer_url" {
  description = "The broker's issuer URL, byte for byte the `server.issuer` of the broker config: https, no port, query, fragment or trailing slash (IAM compares it with the `iss` of every assertion)."
  type        = string

  validation {
    condition     = can(regex("^https://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?:/[A-Za-z0-9._~%!$&'()*+,;=:@-]+)*$", var.issuer_url))
    error_message = "issuer_url must look like https://HOST or https://HOST/PATH, with no port, query, fragment or trailing slash: it has to equal the broker's server.issuer exactly."
  }
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

  validation {
    condition     = length(var.roles) > 0
    error_message = "roles must name at least one broker role."
  }
  validation {
    # The broker's own rule for role names; anything else could never match a broker role.
    condition     = alltrue([for name in keys(var.roles) : can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name))])
    error_message = "Each key of roles must be a broker role name: ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ (no wildcards, no colons)."
  }
  validation {
    condition = alltrue([
      for name, role in var.roles :
      can(regex("^[\\w+=,.@-]{1,64}$", coalesce(role.iam_role_name, "${var.role_name_prefix}${name}")))
    ])
    error_message = "Each IAM role name (iam_role_name, or role_name_prefix + broker role name) must match [\\w+=,.@-]{1,64}; set iam_role_name for long broker role names."
  }
  validation {
    # IAM role names are unique regardless of case: Deploy and deploy, or two equal
    # iam_role_names, would fail half-way through an apply with EntityAlreadyExists.
    condition     = length(distinct([for name, role in var.roles : lower(coalesce(role.iam_role_name, "${var.role_name_prefix}${name}"))])) == length(var.roles)
    error_message = "Two roles would get the same IAM role name (IAM ignores case): give them different broker role names or iam_role_name values."
  }
  validation {
    condition     = alltrue([for role in var.roles : role.max_session_duration >= 3600 && role.max_session_duration <= 43200 && floor(role.max_session_duration) == role.max_session_duration])
    error_message = "max_session_duration must be a whole number of seconds from 3600 to 43200 (IAM's limits)."
  }
  validation {
    condition     = alltrue([for role in var.roles : role.duration >= 900 && role.duration <= role.max_session_duration && floor(role.duration) == role.duration])
    error_message = "duration must be a whole number of seconds from 900 up to the role's max_session_duration."
  }
  validation {
    condition = alltrue(flatten([
      for role in var.roles : [for arn in role.managed_policy_arns : can(regex("^arn:aws[a-z-]*:iam::(aws|[0-9]{12}):policy/[\\w+=,.@/-]+$", arn))]
    ]))
    error_message = "managed_policy_arns must be IAM policy ARNs (arn:aws:iam::ACCOUNT:policy/NAME or an AWS managed policy)."
  }
  validation {
    condition = alltrue(flatten([
      for role in var.roles : [for name, doc in role.inline_policies : can(regex("^[\\w+=,.@-]{1,128}$", name)) && can(jsondecode(doc))]
    ]))
    error_message = "inline_policies maps a policy name ([\\w+=,.@-]{1,128}) to a JSON policy document (use data.aws_iam_policy_document.x.json or jsonencode)."
  }
  validation {
    condition     = alltrue([for role in var.roles : role.permissions_boundary == null || can(regex("^arn:aws[a-z-]*:iam::(aws|[0-9]{12}):policy/[\\w+=,.@/-]+$", role.permissions_boundary))])
    error_message = "permissions_boundary must be an IAM policy ARN."
  }
  validation {
    condition     = alltrue([for role in var.roles : role.region == null || can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]+$", role.region))])
    error_message = "region must be an AWS region name such as eu-west-1."
  }
  validation {
    condition = alltrue(flatten([
      for role in var.roles : [for key, value in coalesce(role.session_tags, {}) : length(key) >= 1 && length(key) <= 128 && length(value) <= 256]
    ]))
    error_message = "session_tags keys must be 1-128 characters and values at most 256 (STS limits)."
  }
}

variable "allow_rules" {
  description = "Broker `allow:` rules per broker role name, copied as-is into the broker_roles_yaml output (see CONTRACT section 2). A role left out gets `allow: []`, which the broker refuses to load: write its rules here or in the broker config before deploying it."
  # `any` because rules mix condition shapes (string, list, {glob}, {regex}) that no
  # single Terraform object type can hold; the validations below check the outline and
  # `ci-broker check` checks the rest.
  type     = any
  default  = {}
  nullable = false

  validation {
    condition = alltrue([
      for name, rules in var.allow_rules : try(alltrue([
        for rule in concat(rules, []) :
        can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]*$", rule.provider)) && length(keys(rule.claims)) > 0 && length(setsubtract(keys(rule), ["provider", "claims"])) == 0
      ]), false)
    ])
    error_message = "allow_rules must map role names to lists of rules, each { provider = \"NAME\", claims = { CLAIM = CONDITION, ... } } with at least one claim."
  }
  validation {
    # Terraform keeps an unquoted 892734123 a number, and the broker compares claims only
    # with strings; refuse it here rather than in `ci-broker check` after the apply.
    condition = alltrue(flatten([
      for name, rules in var.allow_rules : try([
        for rule in concat(rules, []) : [
          for claim, value in rule.claims :
          try(startswith(jsonencode(value), "\""), false)
          || try(startswith(jsonencode(value), "[") && length(value) > 0 && alltrue([for v in value : startswith(jsonencode(v), "\"")]), false)
          || try(length(value) == 1 && contains(["glob", "regex"], one(keys(value))) && startswith(jsonencode(one(values(value))), "\""), false)
        ]
      ], [false])
    ]))
    error_message = "Each claim condition must be a string, a list of strings, { glob = \"PATTERN\" } or { regex = \"PATTERN\" }; quote numbers and booleans, e.g. repository_id = \"892734123\"."
  }
  validation {
    condition     = length(setsubtract(keys(var.allow_rules), keys(var.roles))) == 0
    error_message = "allow_rules names roles that are not in roles."
  }
}

variable "mode" {
  description = "How the broker reaches the roles. web_identity (default): each role trusts the broker's OIDC issuer and the broker needs no AWS credentials. assume_role: each role trusts broker_principal_arn, the broker's own IAM principal; role separation then rests on the broker alone."
  type        = string
  default     = "web_identity"
  nullable    = false

  validation {
    condition     = contains(["web_identity", "assume_role"], var.mode)
    error_message = "mode must be web_identity or assume_role."
  }
}

variable "broker_principal_arn" {
  description = "For mode = assume_role only: the ARN of the IAM role or user the broker runs as. Must be an exact ARN, never a wildcard or an account root."
  type        = string
  default     = null

  validation {
    condition     = var.mode == "assume_role" ? can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/[\\w+=,.@/-]+$", var.broker_principal_arn)) : var.broker_principal_arn == null
    error_message = "broker_principal_arn is required for mode = assume_role (an exact arn:aws:iam::ACCOUNT:role/NAME or user/NAME) and must be unset for web_identity."
  }
}

variable "existing_oidc_provider_arn" {
  description = "ARN of an IAM OIDC provider for issuer_url that already exists in the account (IAM allows one per URL). Null creates it. Ignored in assume_role mode."
  type        = string
  default     = null

  validation {
    condition     = var.existing_oidc_provider_arn == null || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:oidc-provider/[^*?]+$", var.existing_oidc_provider_arn))
    error_message = "existing_oidc_provider_arn must be an arn:aws:iam::ACCOUNT:oidc-provider/HOST[/PATH] ARN."
  }
}

variable "thumbprint_list" {
  description = "Optional SHA-1 thumbprints of the issuer's TLS certificate chain. Null lets IAM verify the chain against its own trusted CAs, which is what you want unless the broker uses a private CA."
  type        = list(string)
  default     = null

  validation {
    condition     = var.thumbprint_list == null || alltrue([for t in coalesce(var.thumbprint_list, []) : can(regex("^[0-9A-Fa-f]{40}$", t))])
    error_message = "Each thumbprint must be 40 hexadecimal characters."
  }
}

variable "role_name_prefix" {
  description = "Prefix of the IAM role names made from broker role names (a role's iam_role_name overrides it)."
  type        = string
  default     = "ci-broker-"
  nullable    = false

  validation {
    condition     = can(regex("^[\\w+=,.@-]{0,32}$", var.role_name_prefix))
    error_message = "role_name_prefix must match [\\w+=,.@-]{0,32}."
  }
}

variable "role_path" {
  description = "IAM path of the created roles."
  type        = string
  default     = "/"
  nullable    = false

  validation {
    condition     = can(regex("^/([\\w+=,.@-]+/)*$", var.role_path))
    error_message = "role_path must start and end with / (for example /ci-broker/)."
  }
}

variable "tags" {
  description = "Tags for every created resource."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = alltrue([for key, value in var.tags : length(key) >= 1 && length(key) <= 128 && length(value) <= 256])
    error_message = "Tag keys must be 1-128 characters and values at most 256."
  }
}
