"""What an audited guarantee means, in words: the neighbouring relation, what is protected,
and against whom, per unit and mechanism (the audit's guarantee statements quote them)."""

from __future__ import annotations

NEIGHBOURS = {
    "user": "adding or removing one user's whole interaction sequence",
    "window": "adding or removing one training window (an input subsequence and its target)",
}
PROTECTED = {
    "user": "whether any one user took part, and every item of that user's history",
    "window": "each single training window; a user with k windows only gets about k times "
    "epsilon (group privacy)",
}
AGAINST = {
    "dp-fedavg": "anyone who sees the global models the server releases, the clients "
    "included; not the server itself: in a deployment it sees the cohorts' clipped sums "
    "(only their total under secure aggregation), in a simulation it reads every user's "
    "data as the measurement harness that evaluates them. The population size is public",
    "dp-statistics": "anyone who sees the released global statistics (item popularity, "
    "attribute transitions) or what devices compute from them; not the server itself: in "
    "a deployment it sees the clients' bounded sums, in a simulation it reads every user's "
    "data as the measurement harness that evaluates them. The population size is public",
    "dp-statistics + dp-fedavg": "anyone who sees the released global statistics or the "
    "global models the server releases, the clients included; not the server itself: in a "
    "deployment it sees the clients' bounded and clipped sums, in a simulation it reads "
    "every user's data as the measurement harness that evaluates them. The population "
    "size is public",
    "dp-sgd": "anyone who sees the node's model updates, the server included (and so "
    "anyone who sees the global models); in a simulation the server also reads every "
    "user's data as the measurement harness that evaluates them. The population size is "
    "public",
}
