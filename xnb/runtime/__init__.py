"""What runs inside the cluster: the Supervisor (a scheduler plugin), its
registry and placement, the model actor on each worker, the RPC handle clients
use to reach an actor, and the recipes that start or join a Dask cluster."""
