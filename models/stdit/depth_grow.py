"""Grow a trained STDiT to more blocks without changing what it computes (depth up-scaling).

New blocks are inserted between the trained ones with their output projections zeroed: the
attention / temporal-attention / cross-attention `proj` and the MLP `fc2` (weights and biases).
Every sub-layer of such a block adds `gate * 0` to the residual stream, so the block is the
identity and the grown model gives the same output as the trained one (up to float rounding)
until fine-tuning moves those projections. Their other weights keep the model's own
initialisation, so gradients reach the zeroed projections from the first step (the same
zero-output start upstream uses for the temporal blocks of STDiT3).

The trained blocks keep their order and are spread evenly: with depth d -> D, trained block i
goes to position round(i * D / d) (4 -> 8: positions 0, 2, 4, 6). STDiT3 grows its spatial and
temporal block lists together; STDiT2 its single block list. This is our own tool, not an
upstream Open-Sora one.
"""
from . import checkpoint as ckpt

BLOCK_LISTS = {"STDiT2": ("blocks",), "STDiT3": ("spatial_blocks", "temporal_blocks")}
ZEROED_SUFFIXES = (".proj.weight", ".proj.bias", ".mlp.fc2.weight", ".mlp.fc2.bias")


def trained_positions(depth, new_depth):
    """Positions (0-based, ascending) of the `depth` trained blocks in a model of `new_depth`.

    Raises:
        ValueError: depths not positive ints, or new_depth < depth.
    """
    for name, d in (("depth", depth), ("new depth", new_depth)):
        if int(d) != d or d < 1:
            raise ValueError(f"{name} must be a positive int, got {d!r}")
    if new_depth < depth:
        raise ValueError(f"new depth {new_depth} must be at least the model's depth {depth} (blocks are only added)")
    return [round(i * new_depth / depth) for i in range(depth)]


def grow_state(state, new_state, list_names, depth, new_depth):
    """Map a trained state ({key: numpy array}, Paddle layout) onto a freshly initialised state of
    the grown model: trained blocks to their new positions, new blocks keep `new_state`'s values
    with the output projections zeroed, every non-block weight copied.

    Returns:
        {key: numpy array} with exactly `new_state`'s keys and shapes.

    Raises:
        ValueError: a non-block key of `state` is missing from `new_state` or has another shape.
    """
    positions = trained_positions(depth, new_depth)
    old_of_new = {p: i for i, p in enumerate(positions)}
    out = {}
    for key, value in new_state.items():
        head, _, rest = key.partition(".")
        if head in list_names:
            index, _, sub = rest.partition(".")
            j = int(index)
            if j in old_of_new:
                out[key] = state[f"{head}.{old_of_new[j]}.{sub}"]
            elif ("." + sub).endswith(ZEROED_SUFFIXES):
                out[key] = value * 0
            else:
                out[key] = value
        else:
            if key not in state or state[key].shape != value.shape:
                got = "missing" if key not in state else list(state[key].shape)
                raise ValueError(f"weight {key}: expected shape {list(value.shape)}, got {got}")
            out[key] = state[key]
    return out


def grow_depth(model, new_depth, seed=0):
    """A new model of the same class and config with `depth=new_depth`, computing the same function.

    Args:
        model: an STDiT2 / STDiT3.
        new_depth: int >= model.depth.
        seed: Paddle seed for the new blocks' (non-zeroed) initial weights.

    Returns:
        the new model (eval mode); `config["depth"] == new_depth`.

    Raises:
        ValueError: a model class without a known block layout, or new_depth < model.depth.
    """
    name = type(model).__name__
    if name not in BLOCK_LISTS:
        raise ValueError(f"can only grow {sorted(BLOCK_LISTS)}, got {name}")
    depth = int(model.config["depth"])
    trained_positions(depth, new_depth)  # validate before building anything
    import paddle

    paddle.seed(seed)
    config = dict(model.config, depth=int(new_depth))
    new = type(model).from_config(config)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    fresh = {k: v.numpy() for k, v in new.state_dict().items()}
    ckpt.load_state(new, grow_state(state, fresh, BLOCK_LISTS[name], depth, int(new_depth)),
                    f"{name} grown to depth {new_depth}")
    new.eval()
    return new
