/* vd_index: see vd_index.h. */
#include "vd_index.h"

#include <stdlib.h>
#include <string.h>

#define MIN_CAP 64

uint64_t vd_index_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static const char *key_of(const struct vd_index *x, const void *item) {
    return (const char *)item + x->key_off;
}

static void **link_of(const struct vd_index *x, void *item) {
    return (void **)((char *)item + x->link_off);
}

static void **bucket(void **buckets, size_t cap, const char *key) {
    return &buckets[vd_index_hash(key) & (cap - 1)];
}

void vd_index_init(struct vd_index *x, size_t key_off, size_t link_off) {
    memset(x, 0, sizeof *x);
    x->key_off = key_off;
    x->link_off = link_off;
}

void *vd_index_find(const struct vd_index *x, const char *key) {
    if (!x->cap) return NULL;
    for (void *it = *bucket(x->buckets, x->cap, key); it; it = *link_of(x, it))
        if (strcmp(key_of(x, it), key) == 0) return it;
    return NULL;
}

/* Doubles the buckets: at most one item per bucket on average. */
static void grow(struct vd_index *x) {
    size_t cap = x->cap ? x->cap * 2 : MIN_CAP;
    void **b = calloc(cap, sizeof *b);
    if (!b) abort();
    for (size_t i = 0; i < x->cap; i++)
        for (void *it = x->buckets[i], *next; it; it = next) {
            next = *link_of(x, it);
            void **head = bucket(b, cap, key_of(x, it));
            *link_of(x, it) = *head;
            *head = it;
        }
    free(x->buckets);
    x->buckets = b;
    x->cap = cap;
}

void vd_index_add(struct vd_index *x, void *item) {
    if (x->n + 1 > x->cap) grow(x);
    void **head = bucket(x->buckets, x->cap, key_of(x, item));
    *link_of(x, item) = *head;
    *head = item;
    x->n++;
}

int vd_index_del(struct vd_index *x, void *item) {
    if (!x->cap) return 0;
    for (void **p = bucket(x->buckets, x->cap, key_of(x, item)); *p; p = link_of(x, *p))
        if (*p == item) {
            *p = *link_of(x, item);
            *link_of(x, item) = NULL;
            x->n--;
            return 1;
        }
    return 0;
}

void vd_index_free(struct vd_index *x) {
    free(x->buckets);
    x->buckets = NULL;
    x->cap = x->n = 0;
}
