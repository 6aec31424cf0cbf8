# The broker's `roles:` entries for these identities (CONTRACT section 2). Fed only by
# variables, local.tenant_id and local.client_ids, so tests can evaluate this file on its
# own with stand-in IDs, without the Azure providers.
locals {
  broker_roles = {
    for name, role in var.roles : name => {
      cloud = "azure"
      azure = { for key, value in {
        tenant_id       = local.tenant_id
        client_id       = local.client_ids[name]
        scope           = role.scope
        subscription_id = role.subscription_id
      } : key => value if value != null }
      allow = try(var.allow_rules[name], [])
    }
  }

  broker_roles_yaml = yamlencode({ roles = local.broker_roles })
}
