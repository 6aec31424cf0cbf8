# The broker's `roles:` entries for these identities (CONTRACT section 2). Fed only by
# variables, local.tenant_id and local.client_ids, so tests can evaluate this file on its
# own with stand-in IDs, without the Azure providers.
locals {
  # Entra ID's public cloud, which the broker assumes unless a role says otherwise.
  public_cloud = {
    assertion_audience = "api://AzureADTokenExchange"
    authority_host     = "https://login.microsoftonline.com"
  }

  # The aud of the broker's assertions for these roles, and the only audience their
  # federated credentials accept.
  token_exchange_audience = coalesce(var.token_exchange_audience, local.public_cloud.assertion_audience)
  authority_host          = coalesce(var.authority_host, local.public_cloud.authority_host)

  broker_roles = {
    for name, role in var.roles : name => {
      cloud = "azure"
      azure = { for key, value in {
        tenant_id          = local.tenant_id
        client_id          = local.client_ids[name]
        scope              = role.scope
        subscription_id    = role.subscription_id
        assertion_audience = local.token_exchange_audience != local.public_cloud.assertion_audience ? local.token_exchange_audience : null
        authority_host     = local.authority_host != local.public_cloud.authority_host ? local.authority_host : null
      } : key => value if value != null }
      allow = try(var.allow_rules[name], [])
    }
  }

  broker_roles_yaml = yamlencode({ roles = local.broker_roles })
}
