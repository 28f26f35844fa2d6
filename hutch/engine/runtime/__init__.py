"""The OCI runtime adapter: crun or runc behind one interface (``base.OCIRuntime``)."""
