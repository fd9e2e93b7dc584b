/* vd_offsets: the per-partition watermark of inputs whose every output Kafka has acknowledged.
 *
 * Inputs of one partition are added in offset order as they are consumed; each is marked
 * done when all the outputs it caused are acknowledged, in whatever order delivery reports
 * come. The committable offset only ever moves over a contiguous run of done inputs from the
 * oldest one, so a crash never commits past an input whose outputs might be lost. Pure data
 * structure: no Kafka, no clock. */
#ifndef VD_OFFSETS_H
#define VD_OFFSETS_H

#include <stddef.h>
#include <stdint.h>

struct vd_offsets {
    int64_t *off;         /* ring of tracked offsets, increasing */
    unsigned char *done;  /* parallel ring: 1 = all outputs acknowledged */
    size_t head, len, cap;
    int64_t next;         /* offset to commit (last contiguous done + 1); -1 = nothing yet */
};

void vd_offsets_init(struct vd_offsets *t);
void vd_offsets_free(struct vd_offsets *t);
/* Forgets every tracked offset (partition revoked or reassigned). */
void vd_offsets_reset(struct vd_offsets *t);

/* Tracks a newly consumed offset; it must be greater than every offset tracked before.
 * Returns 0, or -1 if it is not increasing or memory ran out. */
int vd_offsets_add(struct vd_offsets *t, int64_t offset);

/* Marks a tracked offset done. Returns 1 when the committable offset moved (read it from
 * t->next), 0 when it did not, -1 when the offset is not tracked. */
int vd_offsets_done(struct vd_offsets *t, int64_t offset);

/* Number of offsets tracked and not yet passed by the watermark. */
size_t vd_offsets_pending(const struct vd_offsets *t);

#endif
