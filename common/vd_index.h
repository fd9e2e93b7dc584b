/* vd_index: items by an ID string they carry, in a chained hash table that grows with them.
 *
 * Intrusive: an item holds its key (a NUL-terminated string at key_off) and its chain link
 * (a pointer at link_off); the table holds no copies and allocates only its buckets. Several
 * items may share a key. Every operation is O(1) on average, so a set of 100,000 jobs costs
 * what a set of ten does. */
#ifndef VD_INDEX_H
#define VD_INDEX_H

#include <stddef.h>
#include <stdint.h>

struct vd_index {
    void **buckets;
    size_t cap, n;
    size_t key_off;  /* offsetof the item's key (a char array) */
    size_t link_off; /* offsetof the item's chain pointer (a void *) */
};

/* FNV-1a of a NUL-terminated string. */
uint64_t vd_index_hash(const char *s);

void vd_index_init(struct vd_index *x, size_t key_off, size_t link_off);
/* An item with the key, or NULL. */
void *vd_index_find(const struct vd_index *x, const char *key);
/* Adds the item (which must not be in the index). */
void vd_index_add(struct vd_index *x, void *item);
/* Removes the item; returns 1, or 0 when it was not there. */
int vd_index_del(struct vd_index *x, void *item);
void vd_index_free(struct vd_index *x);

#endif
