"""Where ablation happens: the hook point of each layer (``pre_out``) and the hooks that record or
replace its value (``hooks``). Every stage that touches a hooked model reads these types; how a
model's hook points are found is ``families.locate``."""
