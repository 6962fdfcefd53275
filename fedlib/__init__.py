"""fedlib: a small, fast, reproducible companion to Romoa and "Learning to Attack FL".

Modules follow the papers' nouns: ``data`` and ``models`` build tasks, ``engine`` runs
federated rounds on flat parameter vectors, ``aggregators`` are the defenses, ``attacks``
the poisoning strategies, ``romoa`` the Romoa aggregation rule, ``game`` the
game-theoretic checker of Romoa §4, ``inversion`` the gradient inversion of L2A §4.2,
and ``runs`` the cached experiment runner the notebooks call.
"""

__version__ = "0.5.0"
