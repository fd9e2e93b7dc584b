/* vd_offsets: contiguous per-partition commit watermark (see vd_offsets.h).
 *
 * A ring buffer of (offset, done) in consumption order. Marking is a binary search over the
 * ring, since offsets are increasing though not always consecutive (compacted topics,
 * transaction markers); the watermark pops done entries from the head. */
#include "vd_offsets.h"

#include <stdlib.h>
#include <string.h>

void vd_offsets_init(struct vd_offsets *t) {
    memset(t, 0, sizeof *t);
    t->next = -1;
}

void vd_offsets_free(struct vd_offsets *t) {
    free(t->off);
    free(t->done);
    vd_offsets_init(t);
}

void vd_offsets_reset(struct vd_offsets *t) {
    t->head = t->len = 0;
    t->next = -1;
}

static size_t slot(const struct vd_offsets *t, size_t i) { return (t->head + i) % t->cap; }

static int grow(struct vd_offsets *t) {
    size_t ncap = t->cap ? t->cap * 2 : 64;
    int64_t *off = malloc(ncap * sizeof *off);
    unsigned char *done = malloc(ncap);
    if (!off || !done) {
        free(off);
        free(done);
        return -1;
    }
    for (size_t i = 0; i < t->len; i++) {
        off[i] = t->off[slot(t, i)];
        done[i] = t->done[slot(t, i)];
    }
    free(t->off);
    free(t->done);
    t->off = off;
    t->done = done;
    t->cap = ncap;
    t->head = 0;
    return 0;
}

int vd_offsets_add(struct vd_offsets *t, int64_t offset) {
    if (t->len && t->off[slot(t, t->len - 1)] >= offset) return -1;
    if (!t->len && t->next >= 0 && offset < t->next) return -1;
    if (t->len == t->cap && grow(t) < 0) return -1;
    size_t s = slot(t, t->len);
    t->off[s] = offset;
    t->done[s] = 0;
    t->len++;
    return 0;
}

int vd_offsets_done(struct vd_offsets *t, int64_t offset) {
    size_t lo = 0, hi = t->len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->off[slot(t, mid)] < offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == t->len || t->off[slot(t, lo)] != offset) return -1;
    t->done[slot(t, lo)] = 1;
    int moved = 0;
    while (t->len && t->done[t->head]) {
        t->next = t->off[t->head] + 1;
        t->head = (t->head + 1) % t->cap;
        t->len--;
        moved = 1;
    }
    return moved;
}

size_t vd_offsets_pending(const struct vd_offsets *t) { return t->len; }
