locals {
  web_identity = var.mode == "web_identity"

  # IAM names the OIDC condition keys after the provider URL without its scheme,
  # e.g. broker.example.com:sub or broker.example.com/ci:sub.
  issuer_host = trimprefix(var.issuer_url, "https://")

  oidc_provider_arn = !local.web_identity ? null : (
    var.existing_oidc_provider_arn != null ? var.existing_oidc_provider_arn : one(aws_iam_openid_connect_provider.broker[*].arn)
  )

  role_arns = { for name, role in aws_iam_role.broker : name => role.arn }

  iam_role_names = { for name, role in var.roles : name => coalesce(role.iam_role_name, "${var.role_name_prefix}${name}") }

  managed_policy_attachments = merge([
    for name, role in var.roles : { for arn in role.managed_policy_arns : "${name} ${arn}" => { role = name, policy_arn = arn } }
  ]...)
  inline_policies = merge([
    for name, role in var.roles : { for policy_name, document in role.inline_policies : "${name} ${policy_name}" => { role = name, name = policy_name, document = document } }
  ]...)
}

resource "aws_iam_openid_connect_provider" "broker" {
  count = local.web_identity && var.existing_oidc_provider_arn == null ? 1 : 0

  url = var.issuer_url
  # The broker mints AWS assertions with aud = sts.amazonaws.com and nothing else.
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = var.thumbprint_list
  tags            = var.tags
}

# A provider made elsewhere must be for the same issuer and accept the broker's audience,
# or every exchange would fail at STS with an unhelpful InvalidIdentityToken.
data "aws_iam_openid_connect_provider" "existing" {
  count = local.web_identity && var.existing_oidc_provider_arn != null ? 1 : 0

  arn = var.existing_oidc_provider_arn

  lifecycle {
    postcondition {
      condition     = trimprefix(self.url, "https://") == local.issuer_host && contains(self.client_id_list, "sts.amazonaws.com")
      error_message = "existing_oidc_provider_arn is not an OIDC provider for issuer_url with client id sts.amazonaws.com."
    }
  }
}

data "aws_iam_policy_document" "trust_web_identity" {
  for_each = local.web_identity ? var.roles : {}

  statement {
    sid    = "BrokerAssertionForThisRoleOnly"
    effect = "Allow"
    # TagSession lets the broker pass session tags from the CI context; without it
    # STS refuses any assertion that carries tags.
    actions = ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"]

    principals {
      type        = "Federated"
      identifiers = [local.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.issuer_host}:aud"
      values   = ["sts.amazonaws.com"]
    }

    # Exact subject: an assertion minted for any other broker role cannot assume this one.
    condition {
      test     = "StringEquals"
      variable = "${local.issuer_host}:sub"
      values   = ["role:${each.key}"]
    }
  }
}

data "aws_iam_policy_document" "trust_assume_role" {
  for_each = local.web_identity ? {} : var.roles

  statement {
    sid     = "BrokerPrincipalOnly"
    effect  = "Allow"
    actions = ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]

    principals {
      type        = "AWS"
      identifiers = [var.broker_principal_arn]
    }
  }
}

resource "aws_iam_role" "broker" {
  for_each = var.roles

  name                 = local.iam_role_names[each.key]
  path                 = var.role_path
  description          = coalesce(each.value.description, "ci-broker role ${each.key}")
  max_session_duration = each.value.max_session_duration
  permissions_boundary = each.value.permissions_boundary
  assume_role_policy = (local.web_identity
    ? data.aws_iam_policy_document.trust_web_identity[each.key].json
    : data.aws_iam_policy_document.trust_assume_role[each.key].json
  )
  tags = merge(var.tags, { "ci-broker-role" = each.key })
}

resource "aws_iam_role_policy_attachment" "managed" {
  for_each = local.managed_policy_attachments

  role       = aws_iam_role.broker[each.value.role].name
  policy_arn = each.value.policy_arn
}

resource "aws_iam_role_policy" "inline" {
  for_each = local.inline_policies

  role   = aws_iam_role.broker[each.value.role].id
  name   = each.value.name
  policy = each.value.document
}
