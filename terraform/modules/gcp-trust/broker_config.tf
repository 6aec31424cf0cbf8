# The broker's `roles:` entries for this pool (CONTRACT section 2). Fed only by variables
# and local.audience, so tests can evaluate this file on its own with a stand-in audience,
# without the Google provider.
locals {
  broker_roles = {
    for name, role in var.roles : name => {
      cloud = "gcp"
      gcp = { for key, value in {
        audience          = local.audience
        service_account   = role.service_account
        scopes            = role.scopes
        lifetime          = role.lifetime
        extended_lifetime = role.extended_lifetime ? true : null
      } : key => value if value != null }
      allow = try(var.allow_rules[name], [])
    }
  }

  broker_roles_yaml = yamlencode({ roles = local.broker_roles })
}
