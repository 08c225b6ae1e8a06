"""LoRA-MoE: E expert LoRAs per targeted module, mixed per sample by a router and scaled by a learned timestep gate.

    y = W·x + τ(t) · Σ_e g_e · s · B_e A_e x

Stage 1 is ordinary training (per-projection ranks, block selection, `stage1.py`) merged into the DiT files
(`merge_stage1.py`); stage 2 (`train.py`) trains the experts, the router (`router.py`) and the gate (`gate.py`) on
the merged model. Nothing here detaches the gates: the diffusion loss reaches the router and τ.
"""
