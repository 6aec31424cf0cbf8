data "google_project" "pool" {
  project_id = var.project_id
}

locals {
  subjects = [for name in sort(keys(var.roles)) : "role:${name}"]

  # The provider's own full resource name is the audience the broker puts in its
  # assertions. Spelled out from the project number rather than read back from the
  # provider resource, which would make the provider depend on itself.
  expected_audience = "//iam.googleapis.com/projects/${data.google_project.pool.number}/locations/global/workloadIdentityPools/${var.pool_id}/providers/${var.provider_id}"
  audience          = "//iam.googleapis.com/${google_iam_workload_identity_pool_provider.broker.name}"

  principals = {
    for name in keys(var.roles) : name => "principal://iam.googleapis.com/${google_iam_workload_identity_pool.broker.name}/subject/role:${name}"
  }

  impersonated = { for name, role in var.roles : name => role if role.service_account != null }

  direct_bindings = merge([
    for name, role in var.roles : { for iam_role in role.project_roles : "${name} ${iam_role}" => { role = name, iam_role = iam_role } }
  ]...)
}

resource "google_iam_workload_identity_pool" "broker" {
  project                   = var.project_id
  workload_identity_pool_id = var.pool_id
  display_name              = "ci-broker"
  description               = "Identities of ci-broker roles (subject role:NAME)"
}

resource "google_iam_workload_identity_pool_provider" "broker" {
  project                            = var.project_id
  workload_identity_pool_id          = google_iam_workload_identity_pool.broker.workload_identity_pool_id
  workload_identity_pool_provider_id = var.provider_id
  display_name                       = "ci-broker"
  description                        = "The ci-broker issuer; only the configured role subjects"

  attribute_mapping = {
    "google.subject" = "assertion.sub"
  }

  # Without a condition any assertion the broker signs, for any role it will ever have,
  # would become a principal of this pool.
  attribute_condition = "assertion.sub in ${jsonencode(local.subjects)}"

  oidc {
    issuer_uri        = var.issuer_url
    allowed_audiences = [local.expected_audience]
  }

  lifecycle {
    postcondition {
      condition     = "//iam.googleapis.com/${self.name}" == local.expected_audience
      error_message = "The provider's resource name differs from the audience it was told to accept; the broker's assertions would be refused."
    }
  }
}

resource "google_service_account_iam_member" "workload_identity_user" {
  for_each = local.impersonated

  service_account_id = "projects/${regex("@([a-z0-9-]+)\\.iam\\.gserviceaccount\\.com$", each.value.service_account)[0]}/serviceAccounts/${each.value.service_account}"
  role               = "roles/iam.workloadIdentityUser"
  # One subject, never principalSet://: only this broker role may act as the account.
  member = local.principals[each.key]
}

resource "google_project_iam_member" "direct" {
  for_each = local.direct_bindings

  project = var.project_id
  role    = each.value.iam_role
  member  = local.principals[each.value.role]
}
