"""What the services share: configuration, logging, stream names, connection helpers, lifecycle.

Imports point one way: services -> pipeline -> gen. Nothing here imports a service.
"""
