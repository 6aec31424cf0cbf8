locals {
  use_application = var.identity_type == "application"

  identity_names   = { for name, role in var.roles : name => coalesce(role.display_name, "${var.name_prefix}${replace(name, ".", "-")}") }
  credential_names = { for name in keys(var.roles) : name => "broker-role-${replace(name, ".", "-")}" }

  # Only one of the two kinds exists, so each of these merges picks that kind's values.
  tenant_id = one(distinct(concat(
    data.azuread_client_config.current[*].tenant_id,
    [for identity in azurerm_user_assigned_identity.broker : identity.tenant_id],
  )))
  client_ids = merge(
    { for name, app in azuread_application.broker : name => app.client_id },
    { for name, identity in azurerm_user_assigned_identity.broker : name => identity.client_id },
  )
  principal_ids = merge(
    { for name, sp in azuread_service_principal.broker : name => sp.object_id },
    { for name, identity in azurerm_user_assigned_identity.broker : name => identity.principal_id },
  )

  role_assignments = merge([
    for name, role in var.roles : {
      for a in role.role_assignments : "${name} ${a.scope} ${coalesce(a.role_definition_name, a.role_definition_id)}" => merge(a, { role = name })
    }
  ]...)
}

data "azuread_client_config" "current" {
  count = local.use_application ? 1 : 0
}

resource "azuread_application" "broker" {
  for_each = local.use_application ? var.roles : {}

  display_name     = local.identity_names[each.key]
  owners           = distinct(concat([one(data.azuread_client_config.current[*].object_id)], var.application_owners))
  sign_in_audience = "AzureADMyOrg"
}

resource "azuread_service_principal" "broker" {
  for_each = azuread_application.broker

  client_id = each.value.client_id
  owners    = each.value.owners
}

resource "azuread_application_federated_identity_credential" "broker" {
  for_each = azuread_application.broker

  application_id = each.value.id
  display_name   = local.credential_names[each.key]
  description    = "ci-broker role ${each.key}"
  issuer         = var.issuer_url
  audiences      = [local.token_exchange_audience]
  # Exact subject, one per application: no other broker role can sign in as this one.
  subject = "role:${each.key}"
}

resource "azurerm_user_assigned_identity" "broker" {
  for_each = local.use_application ? {} : var.roles

  name                = local.identity_names[each.key]
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = merge(var.tags, { "ci-broker-role" = each.key })
}

resource "azurerm_federated_identity_credential" "broker" {
  for_each = azurerm_user_assigned_identity.broker

  name                = local.credential_names[each.key]
  resource_group_name = var.resource_group_name
  parent_id           = each.value.id
  issuer              = var.issuer_url
  audience            = [local.token_exchange_audience]
  # Exact subject, one per identity: no other broker role can sign in as this one.
  subject = "role:${each.key}"
}

resource "azurerm_role_assignment" "broker" {
  for_each = local.role_assignments

  scope                = each.value.scope
  role_definition_name = each.value.role_definition_name
  role_definition_id   = each.value.role_definition_id
  principal_id         = local.principal_ids[each.value.role]
  # Skips the directory lookup that fails while a new principal is still replicating.
  principal_type = "ServicePrincipal"
}
