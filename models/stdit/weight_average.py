"""Average the weights of DiTs fine-tuned from one starting point (a "model soup").

Two DiTs trained on from the same weights often sit in one basin of the loss, so their weighted
mean is a working model that can keep what each run learned (Wortsman et al. 2022, "Model soups").
This is our own tool, not an upstream Open-Sora one; the models must share class and config.
"""
import numpy as np

from . import checkpoint as ckpt


def mixing_weights(weights, count):
    """Validated mixing weights: `count` floats >= 0 summing to 1 (None -> equal weights).

    Raises:
        ValueError: a count below 2, another number of weights than models, a negative weight,
            or weights not summing to 1 (within 1e-6).
    """
    if count < 2:
        raise ValueError(f"averaging needs at least 2 models, got {count}")
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ValueError(f"got {len(weights)} weights for {count} models; give one weight per model")
    if min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"weights must be >= 0 and sum to 1, got {weights} (sum {sum(weights):.6g})")
    return weights


def average_states(states, weights=None):
    """Weighted mean of state dicts ({key: numpy array}, any float dtype) in float32.

    Args:
        states: list of >= 2 dicts with the same keys and shapes.
        weights: one float per state (>= 0, sum 1), or None for equal weights.

    Returns:
        {key: float32 array} with the first state's keys and shapes.

    Raises:
        ValueError: bad weights (see `mixing_weights`), or a key missing / shaped differently in
            one of the states (named with the state's index).
    """
    weights = mixing_weights(weights, len(states))
    first = states[0]
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != first.keys():
            diff = sorted(set(state) ^ set(first))[:3]
            raise ValueError(f"model {i} has other weights than model 0 (e.g. {diff})")
        for key, value in first.items():
            if state[key].shape != value.shape:
                raise ValueError(f"weight {key}: model 0 has shape {list(value.shape)}, "
                                 f"model {i} {list(state[key].shape)}")
    return {key: sum(w * s[key].astype(np.float32) for w, s in zip(weights, states)).astype(np.float32)
            for key in first}


def average_models(models, weights=None):
    """A new model of the models' class and config whose weights are their weighted mean.

    Args:
        models: list of >= 2 STDiT2 / STDiT3 of one class and one config.
        weights: one float per model (>= 0, sum 1), or None for equal weights.

    Returns:
        the averaged model (eval mode).

    Raises:
        ValueError: models of different classes or configs, or bad weights.
    """
    first = models[0]
    for i, model in enumerate(models[1:], start=1):
        if type(model) is not type(first):
            raise ValueError(f"model {i} is a {type(model).__name__}, model 0 a {type(first).__name__}")
        if model.config != first.config:
            diff = sorted(k for k in set(model.config) | set(first.config)
                          if model.config.get(k) != first.config.get(k))
            raise ValueError(f"model {i} has another config than model 0 (differs in {diff})")
    state = average_states([{k: v.numpy() for k, v in m.state_dict().items()} for m in models], weights)
    new = type(first).from_config(dict(first.config))
    ckpt.load_state(new, state, f"average of {len(models)} {type(first).__name__} models")
    new.eval()
    return new
