# Inputs with a default are `nullable = false`: a caller passing null, as the examples do for
# what their users leave unset, gets the default.

variable "issuer_url" {
  description = "The broker's issuer URL, byte for byte the `server.issuer` of the broker config: https, no port, query, fragment or trailing slash (Entra ID compares it with the `iss` of every assertion)."
  type        = string

  validation {
    condition     = can(regex("^https://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?:/[A-Za-z0-9._~%!$&'()*+,;=:@-]+)*$", var.issuer_url))
    error_message = "issuer_url must look like https://HOST or https://HOST/PATH, with no port, query, fragment or trailing slash: it has to equal the broker's server.issuer exactly."
  }
}

variable "identity_type" {
  description = "What each broker role becomes: application (an Entra ID application and service principal, needs the azuread provider and directory rights) or user_assigned_identity (a managed identity in resource_group_name, needs only Azure RBAC rights)."
  type        = string
  default     = "application"
  nullable    = false

  validation {
    condition     = contains(["application", "user_assigned_identity"], var.identity_type)
    error_message = "identity_type must be application or user_assigned_identity."
  }
}

variable "resource_group_name" {
  description = "For identity_type = user_assigned_identity: the existing resource group that holds the identities."
  type        = string
  default     = null

  validation {
    condition     = var.identity_type == "user_assigned_identity" ? can(regex("^[-\\w.()]{1,89}[-\\w()]$", var.resource_group_name)) : true
    error_message = "resource_group_name is required for identity_type = user_assigned_identity and must be a valid resource group name."
  }
}

variable "location" {
  description = "For identity_type = user_assigned_identity: the Azure region of the identities, e.g. westeurope."
  type        = string
  default     = null

  validation {
    condition     = var.identity_type == "user_assigned_identity" ? can(regex("^[a-z0-9]+$", var.location)) : true
    error_message = "location is required for identity_type = user_assigned_identity (a region name such as westeurope)."
  }
}

variable "name_prefix" {
  description = "Prefix of the application or identity names made from broker role names (a role's display_name overrides it)."
  type        = string
  default     = "ci-broker-"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{0,32}$", var.name_prefix))
    error_message = "name_prefix must be at most 32 letters, digits, hyphens or underscores."
  }
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
    # Managed identity names allow neither dots nor more than 128 characters, and two
    # roles must not end up with the same name.
    condition = (
      alltrue([for name, role in var.roles : can(regex("^[A-Za-z0-9][A-Za-z0-9_-]{2,127}$", coalesce(role.display_name, "${var.name_prefix}${replace(name, ".", "-")}")))])
      && length(distinct([for name, role in var.roles : lower(coalesce(role.display_name, "${var.name_prefix}${replace(name, ".", "-")}"))])) == length(var.roles)
    )
    error_message = "Each identity name (display_name, or name_prefix + role name with dots as hyphens) must be 3-128 letters, digits, hyphens or underscores, starting with a letter or digit, and unique."
  }
  validation {
    # azure-identity's client credential flows only accept the .default scope.
    condition     = alltrue([for role in var.roles : can(regex("^(https://[A-Za-z0-9.-]+(/[A-Za-z0-9._-]+)*|api://[A-Za-z0-9.-]+(/[A-Za-z0-9._-]+)*|[0-9a-fA-F-]{36})/\\.default$", role.scope))])
    error_message = "scope must be a resource's .default scope, e.g. https://management.azure.com/.default."
  }
  validation {
    condition     = alltrue([for role in var.roles : role.subscription_id == null || can(regex("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", role.subscription_id))])
    error_message = "subscription_id must be a GUID."
  }
  validation {
    condition = alltrue(flatten([
      for role in var.roles : [
        for a in role.role_assignments :
        startswith(a.scope, "/") && !strcontains(a.scope, "*") && ((a.role_definition_name == null) != (a.role_definition_id == null))
      ]
    ]))
    error_message = "Each role assignment needs a scope (a resource ID such as /subscriptions/ID/resourceGroups/NAME) and exactly one of role_definition_name or role_definition_id."
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

variable "application_owners" {
  description = "For identity_type = application: object IDs of extra owners of each application and service principal (the identity running Terraform is always an owner)."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for id in var.application_owners : can(regex("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", id))])
    error_message = "application_owners must be object IDs (GUIDs)."
  }
}

variable "tags" {
  description = "Tags for the managed identities (identity_type = user_assigned_identity)."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = alltrue([for key, value in var.tags : length(key) >= 1 && length(key) <= 512 && length(value) <= 256])
    error_message = "Tag names must be 1-512 characters and values at most 256."
  }
}

variable "token_exchange_audience" {
  description = "The audience of every federated identity credential, and the `aud` of the broker's assertions: null for Entra ID's public cloud (api://AzureADTokenExchange); api://AzureADTokenExchangeUSGov for Azure Government, api://AzureADTokenExchangeChina for Azure operated by 21Vianet. Emitted in the roles snippet as `assertion_audience` when it is not the public cloud's."
  type        = string
  default     = null

  validation {
    # The broker's own rule for assertion_audience.
    condition     = var.token_exchange_audience == null || can(regex("^[!-~]{1,256}$", var.token_exchange_audience))
    error_message = "token_exchange_audience must be 1-256 printable characters without spaces, such as api://AzureADTokenExchangeUSGov."
  }
}

variable "authority_host" {
  description = "The Entra ID authority host the broker signs in at: null for the public cloud (https://login.microsoftonline.com); https://login.microsoftonline.us for Azure Government, https://login.chinacloudapi.cn for Azure operated by 21Vianet. Emitted in the roles snippet as `authority_host` when it is not the public cloud's."
  type        = string
  default     = null

  validation {
    # azure-identity accepts only https, and the broker wants the host alone (the tenant
    # comes from tenant_id).
    condition     = var.authority_host == null || can(regex("^https://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$", var.authority_host))
    error_message = "authority_host must be https://HOST with no path, port or trailing slash, such as https://login.microsoftonline.us."
  }
}
