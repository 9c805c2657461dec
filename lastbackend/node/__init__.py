"""The node agent: reconciles the pods assigned to one Docker host into local containers."""
