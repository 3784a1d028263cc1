"""How units are replaced: the methods (one class each) and the context they read, their values on the
device, the nested neuron sets and the schedule of points, fold mode, and optimal constants."""
