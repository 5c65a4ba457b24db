"""The node's own files for the agent: its option directory (agent config) and its
identity (client certificate, key, CSR, kubeconfig, APF)."""
