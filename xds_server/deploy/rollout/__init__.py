"""Phased rollouts by tier: the state (``model``), the order of waves (``waves``),
what a wave's nodes and traffic say (``observe``), the pure decision (``step``) and
the reconcile loop that carries it out (``engine``)."""
