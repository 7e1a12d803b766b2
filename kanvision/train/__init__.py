"""Training: the LightningModule (`module`), the `kanvision fit` CLI glue, run directories and status (`runs`), exact
mid-epoch resume (`resume`) and the grid-update step (`grid_update`)."""
