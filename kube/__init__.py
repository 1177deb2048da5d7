"""Kubernetes access shared by the operator, the scheduler's discovery and the e2e harness.

- `credentials`: kubeconfig (exec credential plugins included), in-cluster ServiceAccount with token
  rotation, proxies: loaded by `kubernetes_asyncio`;
- `client`: the async REST client (raw API paths, server-side apply, watches, counted writes);
- `blocking`: the same client for synchronous callers (tests, the e2e harness);
- `apply`: the content hash that makes a converged reconcile write nothing;
- `labels`: the label and annotation vocabulary of the objects SBS owns;
- `timestamps`: the API's RFC 3339 times.
"""
