"""The triplet-mining kernel shared by `tfmetric.losses` and `tfmetric.addons`.

Triplet terms over the positive pairs of a batch in O(B²) memory: no
`(B, B, B)` tensor, no `(B, B)` sort, static shapes only (XLA).
"""

from keras import ops


def take_columns(matrix, columns):
    """`matrix[i, columns[i]]` for every row `i` (an O(B) gather)."""
    return ops.squeeze(ops.take_along_axis(matrix, ops.expand_dims(columns, 1), axis=1), 1)


# Rows at least this wide are searched for their extremum's first column
# through tiles of `TILE_RANGE` columns (a width that divides the row).
MIN_TILED_COLUMNS = 1024
TILE_RANGE = (64, 512)
PREFERRED_TILE = 256


def _first_column(matrix, target):
    """The first column `j` of each row where `matrix[i, j] == target[i]` (an integer min pass)."""
    size = ops.shape(matrix)[-1]
    columns = ops.arange(size, dtype="int32")
    hit = ops.equal(matrix, ops.expand_dims(target, -1))
    # No hit (a NaN row): the last column, as an XLA gather would clamp it, so gathers and
    # scatters stay in range outside XLA too and a NaN row still gives NaN.
    return ops.minimum(ops.min(ops.where(hit, columns, size), axis=-1), size - 1)


def tile_width(columns):
    """The tile width `_row_extremum_column` uses for rows of `columns` entries, or None.

    A divisor of `columns` within `TILE_RANGE`, the one closest to
    `PREFERRED_TILE`; None for narrow or unknown widths or without such a divisor.
    """
    if not isinstance(columns, int) or columns < MIN_TILED_COLUMNS:
        return None
    low, high = TILE_RANGE
    widths = [w for w in range(low, high + 1) if columns % w == 0]
    return min(widths, key=lambda w: abs(w - PREFERRED_TILE), default=None)


def _row_extremum_column(masked, reduce):
    """The first column holding each row's extremum (`reduce`: `ops.min` or `ops.max`).

    The extremum of every tile of `tile_width` columns comes from one pass
    (from which the row's follows), the first tile holding the row's extremum
    from those (B × B / width), and the column within it from that tile alone
    (gathered: B × width); without a tile width, a second pass over the row
    finds the first column. Under XLA on CPU the second pass cost more than
    the extremum itself (B = 4096: 15 against 11 ms); the tiles remove it.
    """
    size = ops.shape(masked)[1]
    width = tile_width(size)
    if width is None:
        return _first_column(masked, reduce(masked, axis=1))
    # The number of rows may be unknown while tracing (a batch dimension of None).
    tiled = ops.reshape(masked, (-1, size // width, width))
    tile_extremum = reduce(tiled, axis=2)
    # The row's extremum from the tiles' as `-opposite(-x)`: XLA would merge two
    # reductions of one kind into a second pass over the whole row.
    opposite = ops.max if reduce is ops.min else ops.min
    extremum = -opposite(-tile_extremum, axis=1)
    tile = _first_column(tile_extremum, extremum)
    index = ops.expand_dims(ops.expand_dims(tile, 1), 2) + ops.zeros((1, 1, width), "int32")
    within = _first_column(ops.take_along_axis(tiled, index, axis=1)[:, 0, :], extremum)
    # No hit (a NaN row): the last tile's last column, as `_first_column` gives.
    return tile * width + within


def row_argmin(matrix, mask):
    """`argmin(where(mask, matrix, inf), axis=1)` as int32, ties to the first column.

    Single-output row reductions (the masked minimum, then the first column
    holding it: `_row_extremum_column`) instead of one `(value, index)`
    reduction: under XLA on CPU the latter is several times slower than the
    distance GEMM, the former stay near one memory pass. A row without any
    masked-in entry gives column 0, as `argmin` does.
    """
    return _row_extremum_column(ops.where(mask, matrix, float("inf")), ops.min)


def row_argmax(matrix, mask):
    """`argmax(where(mask, matrix, -inf), axis=1)` as int32; see `row_argmin`."""
    return _row_extremum_column(ops.where(mask, matrix, -float("inf")), ops.max)


def add_at(matrix, columns, values):
    """`matrix[i, columns[i]] += values[i]`: one O(B) scatter, one entry per row."""
    rows = ops.arange(ops.shape(matrix)[0], dtype="int32")
    indices = ops.stack([rows, ops.cast(columns, "int32")], axis=1)
    return ops.scatter_update(matrix, indices, take_columns(matrix, columns) + values)


def label_blocks(labels):
    """Where every sample's positives are, from O(B) work on the labels.

    Sorting the labels (a 1-D sort) makes each class a contiguous block of
    the sorted order, so the k-th positive of any anchor is found by index
    arithmetic instead of a pass over a `(B, B)` mask.

    Returns:
        `(order, position, start, count)`: the sorted order (sorted position
        -> sample), each sample's position in it, the first position of its
        label's block and the block's size.
    """
    size = ops.shape(labels)[0]
    order = ops.cast(ops.argsort(labels), "int32")
    sorted_labels = ops.take(labels, order)
    index = ops.arange(size, dtype="int32")
    new_block = ops.concatenate(
        [ops.ones((1,), "bool"), ops.not_equal(sorted_labels[1:], sorted_labels[:-1])]
    )
    block = ops.cumsum(ops.cast(new_block, "int32")) - 1
    block_start = ops.segment_max(ops.where(new_block, index, 0), block, num_segments=size)
    block_size = ops.segment_sum(ops.ones((size,), "int32"), block, num_segments=size)
    position = ops.cast(ops.argsort(order), "int32")
    own_block = ops.take(block, position)
    return order, position, ops.take(block_start, own_block), ops.take(block_size, own_block)


def negative_mask(labels):
    return ops.not_equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))


def loop_mining(dist, labels, margin, soft_margin, semi_hard, masks=None):
    """Sums triplet terms over every positive pair in O(B²) memory.

    One iteration handles the k-th positive of every anchor at once, so the
    loop runs `max_a #positives(a)` times (K - 1 for a P×K batch). The k-th
    positive comes from `_label_blocks` by O(B) index arithmetic; a
    "semi-hard" iteration is then one fused masked row pass over the `(B, B)`
    matrix (the closest negative farther than the positive) plus O(B) gathers
    and scatters, and an "all" iteration one dense pass over the negatives.
    No `(B, B, B)` tensor and no `(B, B)` sort.

    The loop runs on a stopped gradient and accumulates the loss value and its
    gradient with respect to `dist`; they are recombined as
    `value + sum(grad * (dist - stop_gradient(dist)))`, which has the same value
    and the same gradient without storing per-iteration activations. The
    batch-all hinge accumulates only integer slope counts and recovers the
    value from them after the loop (no B×B term matrix per positive).

    With `masks`, the `(positive, negative)` masks of a `(B, N)` matrix of
    the batch against references (`tfmetric._src.references`): the k-th
    positive of an anchor is then its k-th positive column, found by one
    masked row pass over the running count of its positives (an O(B·N)
    integer matrix), and the negatives are the mask's.

    Returns:
        `(value, pairs, nonzero)`, each of shape `(B,)`: per-anchor sums
        carrying the gradient, the anchor's positive pairs (0 for an anchor
        without a negative), and its non-zero triplet terms.
    """
    const = ops.stop_gradient(dist)
    size = ops.shape(dist)[0]
    if masks is None:
        order, position, start, count = label_blocks(labels)
        num_positive = count - 1
        has_negative = ops.less(count, size)
        negative = negative_mask(labels)

        def negatives():
            return negative_mask(labels)

        def is_negative(columns):
            return ops.not_equal(ops.take(labels, columns), labels)
    else:
        positive, negative = masks
        positive_int = ops.cast(positive, "int32")
        num_positive = ops.sum(positive_int, axis=1)
        has_negative = ops.any(negative, axis=1)
        running = ops.cumsum(positive_int, axis=1)
        negative_float = ops.cast(negative, "float32")

        def negatives():
            return negative

        def is_negative(columns):
            return ops.greater(take_columns(negative_float, columns), 0.0)
    farthest_negative = row_argmax(const, negative)
    slots = ops.max(num_positive)

    def term(x):
        if soft_margin:
            return ops.softplus(x), ops.sigmoid(x)
        x = x + margin
        return ops.relu(x), ops.cast(ops.greater(x, 0.0), "float32")

    def body(k, value, grad, nonzero):
        if masks is None:
            # The k-th positive: the k-th member of the label's block, skipping self.
            slot = start + k
            slot = slot + ops.cast(ops.greater_equal(slot, position), "int32")
            valid = ops.logical_and(ops.greater(num_positive, k), has_negative)
            current = ops.take(order, ops.minimum(slot, size - 1))
        else:
            # The k-th positive column: where the running count of positives reaches k + 1.
            valid = ops.logical_and(ops.greater(num_positive, k), has_negative)
            current = row_argmax(running, ops.logical_and(positive, ops.equal(running, k + 1)))
        d_ap = take_columns(const, current)
        if semi_hard:
            farther = ops.logical_and(negatives(), ops.greater(const, ops.expand_dims(d_ap, 1)))
            nearest = row_argmin(const, farther)
            found = ops.logical_and(
                is_negative(nearest), ops.greater(take_columns(const, nearest), d_ap)
            )
            chosen = ops.where(found, nearest, farthest_negative)
            loss, slope = term(d_ap - take_columns(const, chosen))
            loss = ops.where(valid, loss, 0.0)
            slope = ops.where(valid, slope, 0.0)
            grad = add_at(add_at(grad, current, slope), chosen, -slope)
            value = value + loss
        elif not soft_margin:
            # Hinge: the slope is 1 exactly where a term is non-zero, so the
            # value needs no B×B term matrix (see after the loop) and the
            # count of non-zero terms is the slope's row sum.
            hinge = ops.greater(ops.expand_dims(d_ap + margin, 1), const)
            mask = ops.logical_and(ops.logical_and(negatives(), ops.expand_dims(valid, 1)), hinge)
            # `grad` holds integer counts (int32: exact) whose rows sum to zero
            # before each iteration, so after subtracting the slopes the negated
            # row sum is their count: no B×B slope matrix is materialised.
            grad = grad - ops.cast(mask, "int32")
            total = -ops.sum(grad, axis=1)
            grad = add_at(grad, current, total)
            # `value` carries a distance near the active terms' (the first
            # positive's) for the recombination after the loop.
            value = ops.where(ops.equal(k, 0), d_ap, value)
            return k + 1, value, grad, nonzero + ops.cast(total, "float32")
        else:
            mask = ops.logical_and(negatives(), ops.expand_dims(valid, 1))
            loss, slope = term(ops.expand_dims(d_ap, 1) - const)
            loss = ops.where(mask, loss, 0.0)
            slope = ops.where(mask, slope, 0.0)
            total = ops.sum(slope, axis=1)
            grad = add_at(grad - slope, current, total)
            value = value + ops.sum(loss, axis=1)
        hits = ops.cast(ops.greater(loss, 0.0), "float32")
        nonzero = nonzero + (hits if semi_hard else ops.sum(hits, axis=1))
        return k + 1, value, grad, nonzero

    counts = not semi_hard and not soft_margin
    grad_dtype = "int32" if counts else "float32"
    _, value, grad, nonzero = ops.while_loop(
        lambda k, *_: k < slots,
        body,
        (
            ops.convert_to_tensor(0, "int32"),
            ops.zeros((size,), "float32"),
            ops.zeros_like(const, dtype=grad_dtype),
            ops.zeros((size,), "float32"),
        ),
    )
    pairs = ops.where(has_negative, ops.cast(num_positive, "float32"), 0.0)
    if counts:
        # Batch-all hinge: an anchor's value is the sum over its non-zero
        # terms of `d_ap + margin - d_an`, i.e. `margin * nonzero + sum(grad * dist)`
        # (`grad` holds `+total` at each positive and `-count` at each negative).
        grad = ops.cast(grad, dist.dtype)
        centred = dist - ops.expand_dims(value, 1)  # rows of `grad` sum to zero
        return margin * nonzero + ops.sum(grad * centred, axis=1), pairs, nonzero
    value = value + ops.sum(grad * (dist - const), axis=1)
    return value, pairs, nonzero
