"""Kubernetes service account tokens (projected volumes), for jobs on a cluster: GitLab runners,
Jenkins agents, Argo or Tekton pipelines running there.

Source: https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/ (bound
service account tokens: the example payload, with `jti` only when the ServiceAccountTokenJTI
feature is on and `kubernetes.io.node` only with ServiceAccountTokenPodNodeInfo).

The identity is nested: `claims["kubernetes.io"]["serviceaccount"]["uid"]`, written
`kubernetes.io.serviceaccount.uid` in rules. The issuer is the cluster's `--service-account-issuer`.
Anyone who can create pods in a namespace can run them as any service account of that namespace.
"""

from __future__ import annotations

from broker.claims.schema import REGISTERED, ClaimSchema

K8S = "kubernetes.io"
NAMESPACE = f"{K8S}.namespace"
SA_NAME = f"{K8S}.serviceaccount.name"
SA_UID = f"{K8S}.serviceaccount.uid"
POD_NAME = f"{K8S}.pod.name"
POD_UID = f"{K8S}.pod.uid"
NODE_NAME = f"{K8S}.node.name"
NODE_UID = f"{K8S}.node.uid"
SECRET_NAME = f"{K8S}.secret.name"
SECRET_UID = f"{K8S}.secret.uid"

KUBERNETES = ClaimSchema(
    type="kubernetes",
    source="https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/",
    required=frozenset({"sub", NAMESPACE, SA_NAME, SA_UID}),
    known=REGISTERED
    | frozenset(
        {
            NAMESPACE,
            SA_NAME,
            SA_UID,
            POD_NAME,
            POD_UID,
            NODE_NAME,
            NODE_UID,
            SECRET_NAME,
            SECRET_UID,
            f"{K8S}.warnafter",
        }
    ),
    immutable_ids=frozenset({SA_UID, POD_UID, NODE_UID, SECRET_UID}),
    # The pod's name is chosen by whoever creates the pod (or its Job or Deployment).
    user_controlled=frozenset({POD_NAME}),
    neutral={"repository": "sub", "repository_id": SA_UID, "run_id": POD_NAME},
    audited=(NAMESPACE, SA_NAME, SA_UID, POD_NAME, POD_UID, NODE_NAME),
    objects=frozenset({K8S, f"{K8S}.serviceaccount", f"{K8S}.pod", f"{K8S}.node", f"{K8S}.secret"}),
)
