"""What comes out of stored rows: the paper's tables, figures, paired differences, the single-unit
map's importance and agreement, the neuron distributions."""
