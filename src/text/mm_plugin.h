// mm_plugin.h - LLaMA-Factory's llava mm_plugin on text: the "<image>"
// placeholders of a message, counted and expanded into image_seq_length
// image-token strings each. Shared by the dataset encoder and the chat.
#ifndef VLFT_MM_PLUGIN_H
#define VLFT_MM_PLUGIN_H

#define IMAGE_PLACEHOLDER "<image>"

// How many "<image>" placeholders text holds.
int mm_count_images(const char *text);
// A malloc'd copy of text with every placeholder repeated seq_length times.
char *mm_expand_images(const char *text, int seq_length);

#endif
