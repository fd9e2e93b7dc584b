/* vd_lanes: which of the daemon's two producers an output goes through.
 *
 * The batching lane (a producer with linger.ms, 5 ms by default) groups a stream of outputs
 * into few produce requests; the prompt lane (the same producer settings with linger.ms=0)
 * sends an output that comes alone at once. The prompt lane is preferred while the batching
 * one holds nothing unacknowledged and the prompt one fewer than VD_LANES_PROMPT_MAX: a
 * burst's first outputs go out at once and the rest in batches, and once the batching lane's
 * last outputs are acknowledged, outputs are prompt again.
 *
 * Kafka keeps order per producer and partition only, so one key's outputs must never be in
 * both lanes at once: outputs unacknowledged are counted per slot (a hash of topic and key),
 * and an output whose slot the other lane still holds goes through that lane. Pure data
 * structure: no Kafka, no clock. */
#ifndef VD_LANES_H
#define VD_LANES_H

#include <stddef.h>
#include <stdint.h>

enum vd_lane { VD_LANE_BATCH = 0, VD_LANE_PROMPT, VD_LANE__COUNT };

#define VD_LANES_PROMPT_MAX 32
#define VD_LANES_SLOTS 1024

struct vd_lanes {
    int prompt_on;                       /* 0: everything goes through the batching lane */
    size_t unacked[VD_LANE__COUNT];      /* outputs taken and not yet acknowledged */
    uint32_t slot[VD_LANE__COUNT][VD_LANES_SLOTS];
};

/* prompt_on: whether there is a prompt lane at all. */
void vd_lanes_init(struct vd_lanes *l, int prompt_on);
/* The slot of an output (its topic, any small number, and its key). */
unsigned vd_lanes_slot(unsigned topic, const char *key, size_t keylen);
/* Chooses the lane of an output of that slot and counts it there until vd_lanes_done(). */
enum vd_lane vd_lanes_take(struct vd_lanes *l, unsigned slot);
/* The output taken through lane with that slot was acknowledged. */
void vd_lanes_done(struct vd_lanes *l, enum vd_lane lane, unsigned slot);

#endif
