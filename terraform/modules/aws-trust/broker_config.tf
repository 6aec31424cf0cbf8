# The broker's `roles:` entries for the IAM roles of this module (CONTRACT section 2).
# Fed only by variables and local.role_arns, so tests can evaluate this file on its own
# with stand-in ARNs, without the AWS provider.
locals {
  broker_roles = {
    for name, role in var.roles : name => {
      cloud = "aws"
      aws = { for key, value in {
        role_arn     = local.role_arns[name]
        region       = role.region
        duration     = role.duration
        mode         = var.mode == "assume_role" ? "assume_role" : null
        session_tags = role.session_tags
      } : key => value if value != null }
      allow = try(var.allow_rules[name], [])
    }
  }

  broker_roles_yaml = yamlencode({ roles = local.broker_roles })
}
