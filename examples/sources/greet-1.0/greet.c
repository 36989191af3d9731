/* greet: prints a greeting made by libgreet. */
#include <stdio.h>
#include <string.h>

#include <greet.h>

#define PROGRAM_VERSION "1.0"

int main(int argc, char **argv)
{
	char buf[256];
	const char *name = argc > 1 ? argv[1] : NULL;

	if (name != NULL && (strcmp(name, "-v") == 0 || strcmp(name, "--version") == 0)) {
		printf("greet %s (libgreet %s)\n", PROGRAM_VERSION, greet_version());
		return 0;
	}
	if (greet_format(buf, sizeof buf, name) < 0) {
		fputs("greet: cannot format greeting\n", stderr);
		return 1;
	}
	puts(buf);
	return 0;
}
