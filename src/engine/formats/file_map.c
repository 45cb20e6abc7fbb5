/*
 * file_map.c - map a model file read-only and shared.
 */
#include "file_map.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Map path read-only and shared; a regular file of at least min_bytes only. */
PeftCode
file_map(const char *path, const char *label, size_t min_bytes, const char *kind,
		 const uint8_t **base, size_t *size, PeftError *err)
{
	struct stat st;
	void	   *map;
	int			fd;
	PeftCode	code = PEFT_OK;

	*base = NULL;
	*size = 0;
	/* O_NONBLOCK so that a FIFO planted at the path cannot hang us */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return peft_fail(err, PEFT_ERR_IO, "could not open %s: %s", label, strerror(errno));
	if (fstat(fd, &st) != 0)
		code = peft_fail(err, PEFT_ERR_IO, "could not stat %s: %s", label, strerror(errno));
	else if (!S_ISREG(st.st_mode))
		code = peft_fail(err, PEFT_ERR_IO, "%s is not a regular file", label);
	else if ((uint64_t) st.st_size > SIZE_MAX)
		code = peft_fail(err, PEFT_ERR_NOMEM, "%s is too large to map", label);
	else if ((size_t) st.st_size < min_bytes)
		code = peft_fail(err, PEFT_ERR_FORMAT, "%s: %zu bytes is too short for a %s",
						 label, (size_t) st.st_size, kind);
	else if ((map = mmap(NULL, (size_t) st.st_size, PROT_READ, MAP_SHARED, fd, 0)) == MAP_FAILED)
		code = peft_fail(err, PEFT_ERR_IO, "could not map %s: %s", label, strerror(errno));
	else
	{
		/* the mapping outlives the descriptor */
		*base = map;
		*size = (size_t) st.st_size;
	}
	close(fd);
	return code;
}

/* Release a mapping made by file_map. */
void
file_unmap(const uint8_t *base, size_t size)
{
	if (base != NULL)
		munmap((void *) base, size);
}
