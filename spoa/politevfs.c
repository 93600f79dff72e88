/* politevfs: SQLite's default VFS, offering the CPU between writes (see
 * politevfs.h). Every call but xWrite goes straight to the real file. */
#include "politevfs.h"

#include <sqlite3.h>
#include <stddef.h>

struct polite_file {
	sqlite3_file base;
	sqlite3_file *real; /* follows this struct in the same allocation */
};

static sqlite3_vfs polite_vfs;
static sqlite3_vfs *real_vfs;
/* One table per version of the real files' methods (index 1-3), so that
 * SQLite never calls a method a real file lacks; filled once. */
static sqlite3_io_methods polite_methods[4];
static void (*on_write)(void);

#define REAL(f) (((struct polite_file *)(f))->real)

static int p_close(sqlite3_file *f)
{
	return REAL(f)->pMethods->xClose(REAL(f));
}

static int p_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off)
{
	return REAL(f)->pMethods->xRead(REAL(f), buf, n, off);
}

static int p_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off)
{
	if (on_write)
		on_write();
	return REAL(f)->pMethods->xWrite(REAL(f), buf, n, off);
}

static int p_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	return REAL(f)->pMethods->xTruncate(REAL(f), size);
}

static int p_sync(sqlite3_file *f, int flags)
{
	return REAL(f)->pMethods->xSync(REAL(f), flags);
}

static int p_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
	return REAL(f)->pMethods->xFileSize(REAL(f), size);
}

static int p_lock(sqlite3_file *f, int level)
{
	return REAL(f)->pMethods->xLock(REAL(f), level);
}

static int p_unlock(sqlite3_file *f, int level)
{
	return REAL(f)->pMethods->xUnlock(REAL(f), level);
}

static int p_check_reserved(sqlite3_file *f, int *out)
{
	return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int p_file_control(sqlite3_file *f, int op, void *arg)
{
	return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int p_sector_size(sqlite3_file *f)
{
	return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int p_device_characteristics(sqlite3_file *f)
{
	return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int p_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **out)
{
	return REAL(f)->pMethods->xShmMap(REAL(f), region, size, extend, out);
}

static int p_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
	return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}

static void p_shm_barrier(sqlite3_file *f)
{
	REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int p_shm_unmap(sqlite3_file *f, int delete_flag)
{
	return REAL(f)->pMethods->xShmUnmap(REAL(f), delete_flag);
}

static int p_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **out)
{
	return REAL(f)->pMethods->xFetch(REAL(f), off, n, out);
}

static int p_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
	return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static int p_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out_flags)
{
	struct polite_file *pf = (struct polite_file *)f;
	int rc;

	(void)vfs;
	pf->real = (sqlite3_file *)(pf + 1);
	rc = real_vfs->xOpen(real_vfs, name, pf->real, flags, out_flags);
	/* Without methods the real file is not open, and SQLite must not
	 * call ours either (it checks pMethods before xClose). */
	if (!pf->real->pMethods) {
		f->pMethods = NULL;
		return rc;
	}
	{
		int version = pf->real->pMethods->iVersion;

		f->pMethods = &polite_methods[version < 1 ? 1 : version > 3 ? 3 : version];
	}
	return rc;
}

int politevfs_register(void (*hook)(void))
{
	if (real_vfs) {
		on_write = hook;
		return 0;
	}
	real_vfs = sqlite3_vfs_find(NULL);
	if (!real_vfs)
		return -1;
	polite_methods[3] = (sqlite3_io_methods){
		.iVersion = 3,
		.xClose = p_close,
		.xRead = p_read,
		.xWrite = p_write,
		.xTruncate = p_truncate,
		.xSync = p_sync,
		.xFileSize = p_file_size,
		.xLock = p_lock,
		.xUnlock = p_unlock,
		.xCheckReservedLock = p_check_reserved,
		.xFileControl = p_file_control,
		.xSectorSize = p_sector_size,
		.xDeviceCharacteristics = p_device_characteristics,
		.xShmMap = p_shm_map,
		.xShmLock = p_shm_lock,
		.xShmBarrier = p_shm_barrier,
		.xShmUnmap = p_shm_unmap,
		.xFetch = p_fetch,
		.xUnfetch = p_unfetch,
	};
	for (int version = 1; version < 3; version++) {
		polite_methods[version] = polite_methods[3];
		polite_methods[version].iVersion = version;
	}
	/* The rest of the VFS (names, deletes, time, randomness) is the real
	 * one's: the unix VFS's functions other than xOpen do not depend on
	 * which sqlite3_vfs they are called through. */
	polite_vfs = *real_vfs;
	polite_vfs.zName = "tokengate-polite";
	polite_vfs.szOsFile = (int)sizeof(struct polite_file) + real_vfs->szOsFile;
	polite_vfs.xOpen = p_open;
	polite_vfs.pNext = NULL;
	on_write = hook;
	if (sqlite3_vfs_register(&polite_vfs, 1) != SQLITE_OK) {
		real_vfs = NULL;
		return -1;
	}
	return 0;
}
