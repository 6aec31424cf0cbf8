# Inputs with a default are `nullable = false`: a caller passing null, as the examples do for
# what their users leave unset, gets the default.

variable "project_id" {
  description = "ID of the project that holds the workload identity pool (and receives the direct project_roles bindings)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a GCP project ID (6-30 lowercase letters, digits and hyphens)."
  }
}

variable "issuer_url" {
  description = "The broker's issuer URL, byte for byte the `server.issuer` of the broker config: https, no port, query, fragment or trailing slash (STS compares it with the `iss` of every assertion)."
  type        = string

  validation {
    condition     = can(regex("^https://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?:/[A-Za-z0-9._~%!$&'()*+,;=:@-]+)*$", var.issuer_url))
    error_message = "issuer_url must look like https://HOST or https://HOST/PATH, with no port, query, fragment or trailing slash: it has to equal the broker's server.issuer exactly."
  }
}

variable "pool_id" {
  description = "ID of the workload identity pool to create. Google keeps a destroyed pool's ID for about 30 days (soft delete), so an apply after a destroy needs another ID or an undelete: see the README."
  type        = string
  default     = "ci-broker"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{2,30}[a-z0-9]$", var.pool_id)) && !startswith(var.pool_id, "gcp-")
    error_message = "pool_id must be 4-32 lowercase letters, digits and hyphens, and must not start with gcp- (reserved by Google)."
  }
}

variable "provider_id" {
  description = "ID of the OIDC provider to create in the pool. Soft-deleted like the pool: a destroyed provider's ID stays taken for about 30 days."
  type        = string
  default     = "broker"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{2,30}[a-z0-9]$", var.provider_id)) && !startswith(var.provider_id, "gcp-")
    error_message = "provider_id must be 4-32 lowercase letters, digits and hyphens, and must not start with gcp- (reserved by Google)."
  }
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
    # attribute_condition is limited to 4096 characters.
    condition     = length(jsonencode([for name in keys(var.roles) : "role:${name}"])) <= 4000
    error_message = "Too many roles for one provider's attribute_condition (4096 characters); split them over two pools."
  }
  validation {
    # User-managed accounts only: the project is read from the address, and a CI role
    # should never run as a default compute or App Engine account.
    condition     = alltrue([for role in var.roles : role.service_account == null || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z][a-z0-9-]{4,28}[a-z0-9]\\.iam\\.gserviceaccount\\.com$", role.service_account))])
    error_message = "service_account must be a user-managed service account email, NAME@PROJECT.iam.gserviceaccount.com."
  }
  validation {
    condition = alltrue(flatten([
      for role in var.roles : [for r in role.project_roles : can(regex("^(roles/[A-Za-z0-9_.]+|projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/roles/[A-Za-z0-9_.]+|organizations/[0-9]+/roles/[A-Za-z0-9_.]+)$", r))]
    ]))
    error_message = "project_roles must be IAM role names: roles/NAME, projects/PROJECT/roles/NAME or organizations/ID/roles/NAME."
  }
  validation {
    # At project level these let one broker role act as any service account of the
    # project, including those of the other broker roles, which undoes the per-role subject:
    # directly (https://cloud.google.com/iam/docs/service-account-permissions: act as, mint
    # tokens or keys for, or federate as a service account), or by granting that to itself
    # (setIamPolicy on the project or its service accounts, custom role edits, the pool's
    # own mapping). Not exhaustive: see the README.
    condition = alltrue(flatten([
      for role in var.roles : [for r in role.project_roles : !contains([
        "roles/owner",
        "roles/editor",
        "roles/iam.serviceAccountTokenCreator",
        "roles/iam.serviceAccountOpenIdTokenCreator",
        "roles/iam.serviceAccountUser",
        "roles/iam.serviceAccountKeyAdmin",
        "roles/iam.serviceAccountAdmin",
        "roles/iam.workloadIdentityUser",
        "roles/iam.workloadIdentityPoolAdmin",
        "roles/iam.securityAdmin",
        "roles/iam.roleAdmin",
        "roles/resourcemanager.projectIamAdmin",
        "roles/resourcemanager.folderAdmin",
        "roles/resourcemanager.organizationAdmin",
      ], r)]
    ]))
    error_message = "project_roles must not grant owner, editor, service account impersonation, or the right to change IAM policies or roles at project level; bind those on single resources outside this module if you really mean it."
  }
  validation {
    condition     = alltrue([for role in var.roles : length(role.scopes) > 0 && alltrue([for s in role.scopes : can(regex("^https://www\\.googleapis\\.com/auth/[A-Za-z0-9._/-]+$", s))])])
    error_message = "scopes must be one or more OAuth scopes such as https://www.googleapis.com/auth/cloud-platform."
  }
  validation {
    # generateAccessToken gives up to an hour, or 12 with the org policy
    # constraints/iam.allowServiceAccountCredentialLifetimeExtension (extended_lifetime).
    # Without a service account Google's STS fixes the token at an hour and lifetime only
    # caps what callers may ask the broker for.
    condition = alltrue([
      for role in var.roles :
      role.lifetime >= 60 && floor(role.lifetime) == role.lifetime && role.lifetime <= (role.service_account != null && role.extended_lifetime ? 43200 : 3600)
    ])
    error_message = "lifetime must be a whole number of seconds from 60 to 3600, or to 43200 for a service_account role with extended_lifetime = true."
  }
  validation {
    condition     = alltrue([for role in var.roles : !role.extended_lifetime || role.service_account != null])
    error_message = "extended_lifetime applies only to roles with a service_account."
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
