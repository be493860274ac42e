// placeholder, replaced below
#include "commands.h"
int command_demo_data(int argc, char **argv) { (void)argc, (void)argv; return EXIT_USAGE; }
