output "broker_roles_yaml" {
  description = "A `roles:` block for the broker config, one entry per broker role. Roles without allow_rules have `allow: []`, which `ci-broker check` rejects until you add rules."
  value       = local.broker_roles_yaml
}

output "broker_roles" {
  description = "The same entries as broker_roles_yaml as an object, to merge into a config you build with yamlencode."
  value       = local.broker_roles
}

output "role_arns" {
  description = "IAM role ARN per broker role name."
  value       = local.role_arns
}

output "oidc_provider_arn" {
  description = "ARN of the IAM OIDC provider that trusts the broker (null in assume_role mode)."
  value       = local.oidc_provider_arn
}

output "trust_policies" {
  description = "The trust policy JSON of each IAM role, for review."
  value       = { for name, role in aws_iam_role.broker : name => role.assume_role_policy }
}
