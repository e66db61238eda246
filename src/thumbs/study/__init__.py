"""Studies: a grid of ordinary runs on equal budgets (method × β × seed × data condition), their
reward–KL frontier, and a verdict at matched KL (``spec``, ``run``, ``record``, ``verdict``, ``page``)."""
